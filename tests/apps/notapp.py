"""A module whose `app` is not a taskflow App."""

app = 42
