"""The workbench tabs, one module each (``build(page)`` adds the tab and wires its events)."""
