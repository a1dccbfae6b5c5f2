"""What the overlay checks in validate.sh share: a kustomize render read back."""
import yaml


def load(path):
    """The objects of a rendered YAML stream, by (kind, name); each once."""
    objs = {}
    for doc in yaml.safe_load_all(open(path)):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objs, f"{key} twice"
            objs[key] = doc
    return objs
