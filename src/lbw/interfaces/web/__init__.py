"""``lbw web``: the workbench in the browser (Gradio pages calling the same services as the CLI)."""
