"""The ipywidgets front ends: the segment builder, the preview and the outbox monitor.

Thin: every control calls a public function that is tested without a browser.
"""
