"""Segments: who gets a campaign (filters over the recipients frame), saved groups, exports."""
