"""Errors about the user's input that the CLI shows as one message (no heavy imports: GPU machines
without pydantic load the engines, which name models through sapray.engines.models)."""


class ConfigError(ValueError):
    """A config, flag or model name that cannot be used; the message names what is wrong."""


class InputError(ValueError):
    """An input that cannot be read at all (missing file or column, nothing usable); names the file."""
