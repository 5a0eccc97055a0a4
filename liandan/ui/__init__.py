"""Gradio tabs, one file per tab, built on job specs. No training logic here."""
