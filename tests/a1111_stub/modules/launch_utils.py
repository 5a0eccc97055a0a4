TAG = "v1.10.1"


def git_tag() -> str:
    return TAG
