#!/usr/bin/python3
"""A tiny CRI ImageService client: pulls images the way the kubelet does.

  cri.py --socket PATH pull IMAGE [--username U --password P] [--timeout S]
  cri.py --socket PATH status IMAGE [--json]   exit 0 + image id, 1 if absent
  cri.py --socket PATH rmi IMAGE
  cri.py --socket PATH list [--json]

`pull` prints the image ref (containerd: the config digest) and exits 0; on a
gRPC error it prints "CODE: message" on stderr and exits 1 (e.g. when the
registry refuses the credentials).

Wire format. The kubelet calls /runtime.v1.ImageService/* over gRPC on the
runtime's unix socket. We send the same calls with grpcio's generic unary
calls and encode the few protobuf messages by hand, so there is no generated
code, no protoc and no protobuf package to keep in step with containerd. A
protobuf message is a sequence of (tag, value) pairs: the tag is the varint
`field_number << 3 | wire_type`; strings and nested messages are wire type 2
(a varint length, then the bytes), integers and bools wire type 0 (a varint).
proto3 leaves fields at their default (empty, 0) out, and so do we.

Field numbers, checked against kubernetes/cri-api pkg/apis/runtime/v1/api.proto
at v0.23.0 (Kubernetes 1.23, the API containerd 1.6 serves) and at
kubernetes-1.37.0-beta.0 (unchanged for every field used here):
  ImageSpec          {1: image}
  AuthConfig         {1: username, 2: password, 3: auth, 4: server_address,
                      5: identity_token, 6: registry_token}
  PullImageRequest   {1: ImageSpec image, 2: AuthConfig auth, 3: PodSandboxConfig}
  PullImageResponse  {1: image_ref}
  ImageStatusRequest {1: ImageSpec image, 2: bool verbose}
  ImageStatusResponse{1: Image image (absent if not present), 2: map info}
  RemoveImageRequest {1: ImageSpec image}       RemoveImageResponse {}
  ListImagesRequest  {1: ImageFilter{1: ImageSpec}}
  ListImagesResponse {1: repeated Image}
  Image {1: id, 2: repeated repo_tags, 3: repeated repo_digests, 4: uint64 size,
         5: Int64Value uid, 6: username, 7: ImageSpec spec, 8: bool pinned}

grpc is Debian's python3-grpcio (1.51 in bookworm; .ci/run installs it), so
nothing is fetched at run time. Run this script with Debian's /usr/bin/python3
(its shebang): a python3 earlier on PATH (pyenv, a venv) does not see Debian's
packages.
"""
import argparse
import json
import os
import sys

SERVICE = "/runtime.v1.ImageService/"

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # no C-core log lines on stderr
try:
    import grpc
except ImportError:
    sys.exit(f"cri.py: {sys.executable} has no grpc module: install python3-grpcio "
             "and run cri.py with /usr/bin/python3")


# ---------------------------------------------------------------- protobuf
def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, value):
    """A length-delimited field (string or nested message); empty means absent."""
    if value is None or value in (b"", ""):
        return b""
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def decode(buf):
    """Returns {field_number: [value, ...]}: ints for varints, bytes otherwise."""
    out, i = {}, 0

    def read_varint():
        nonlocal i
        n = shift = 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(buf):
        key = read_varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            value = read_varint()
        elif wire == 2:
            size = read_varint()
            value, i = bytes(buf[i:i + size]), i + size
        elif wire in (1, 5):  # fixed64, fixed32
            size = 8 if wire == 1 else 4
            value, i = bytes(buf[i:i + size]), i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(num, []).append(value)
    return out


def image_spec(image):
    return field(1, image)


def auth_config(a):
    body = b"".join(field(n, getattr(a, k)) for n, k in enumerate(
        ["username", "password", "auth", "server_address", "identity_token", "registry_token"], 1))
    return body or None  # no credentials: no AuthConfig at all, as the kubelet does


def parse_image(buf):
    m = decode(buf)

    def text(n):
        return [v.decode() for v in m.get(n, [])]
    return {
        "id": (text(1) or [""])[0],
        "repo_tags": text(2),
        "repo_digests": text(3),
        "size": (m.get(4) or [0])[0],
        "pinned": bool((m.get(8) or [0])[0]),
    }


# ---------------------------------------------------------------- gRPC
def call(args, method, request, timeout):
    channel = grpc.insecure_channel("unix:" + os.path.abspath(args.socket))
    with channel:
        # No serializers: grpcio sends and returns the raw bytes.
        return channel.unary_unary(SERVICE + method)(request, timeout=timeout)


def cmd_pull(args):
    req = field(1, image_spec(args.image)) + field(2, auth_config(args))
    resp = decode(call(args, "PullImage", req, args.timeout))
    print((resp.get(1) or [b""])[0].decode())
    return 0


def cmd_status(args):
    resp = decode(call(args, "ImageStatus", field(1, image_spec(args.image)), args.timeout))
    if not resp.get(1):
        print(f"{args.image}: not present", file=sys.stderr)
        return 1
    img = parse_image(resp[1][0])
    print(json.dumps(img) if args.json else img["id"])
    return 0


def cmd_rmi(args):
    call(args, "RemoveImage", field(1, image_spec(args.image)), args.timeout)
    return 0


def cmd_list(args):
    resp = decode(call(args, "ListImages", b"", args.timeout))
    images = [parse_image(b) for b in resp.get(1, [])]
    for img in images:
        if not args.json:
            print(img["id"], img["size"], ",".join(img["repo_tags"]) or "-",
                  ",".join(img["repo_digests"]) or "-")
    if args.json:
        print(json.dumps(images))
    return 0


def main():
    p = argparse.ArgumentParser(description="CRI ImageService client (kubelet pull path)")
    p.add_argument("--socket", required=True, help="containerd's gRPC unix socket")
    sub = p.add_subparsers(dest="cmd", required=True)
    pull = sub.add_parser("pull", help="PullImage; prints the image ref")
    pull.add_argument("image")
    for flag in ("username", "password", "auth", "server-address", "identity-token", "registry-token"):
        pull.add_argument("--" + flag, default="", help=f"AuthConfig.{flag.replace('-', '_')}")
    # Measured with containerd 1.6.20: a server_address (scheme://host:port) limits the
    # credentials to that one host, so a mirror in hosts.toml never gets them; the
    # kubelet leaves it empty for pull secrets.
    pull.add_argument("--timeout", type=float, default=300)
    for name, helptext in (("status", "ImageStatus; prints the image id"), ("rmi", "RemoveImage")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("image")
        sp.add_argument("--timeout", type=float, default=30)
        if name == "status":
            sp.add_argument("--json", action="store_true", help="print id, tags, digests, size")
    ls = sub.add_parser("list", help="ListImages: id size tags digests, one image a line")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()
    try:
        return {"pull": cmd_pull, "status": cmd_status, "rmi": cmd_rmi, "list": cmd_list}[args.cmd](args)
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
