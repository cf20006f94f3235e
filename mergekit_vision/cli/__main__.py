from mergekit_vision.cli.main import entrypoint

entrypoint()
