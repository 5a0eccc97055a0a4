AlwaysVisible = object()


class Script:
    pass


def basedir() -> str:
    return ""
