"""``pipeline ui``: the operator console in the browser (Starlette, Jinja2, uPlot)."""
