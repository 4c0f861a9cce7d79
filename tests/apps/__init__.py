"""Small apps that tests/test_cli.py runs as ``taskflow run tests.apps.NAME:app`` subprocesses."""
