"""Local stand-ins for services the project cannot reach from here (see `sandbox.itwin_platform`)."""
