"""Live web dashboard (issue 8)."""
