"""The tests' customer display: the package's VFD emulator on a pty (`tillface.display.emulator`)."""

from tillface.display.emulator import TABLES, DisplayError, JsonlCollector, PtyDisplay, VfdEmulator

__all__ = ["TABLES", "DisplayError", "JsonlCollector", "PtyDisplay", "VfdEmulator"]
