"""The ipywidgets front ends: the segment builder and the preview.

Thin: every control calls a public function that is tested without a browser.
"""
