"""Hosts: where files live and which model is loaded: inside A1111 (webui.py) or standalone."""
