"""vpp-agent: the control agent of a virtual power plant (DESIGN.md)."""


def installed_version() -> str:
    """The version pip installed (`vpp-agent --version`, Home Assistant's device info); "unknown" from a bare tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vpp-agent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"
