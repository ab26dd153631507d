"""Contacts: read a source (CSV, Excel, XML, SQL), validate, de-duplicate, store.

Also the recipients frame every later stage works on.
"""
