from modules import record


def torch_gc() -> None:
    record("torch_gc")
