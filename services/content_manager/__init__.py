"""The content manager (seed 004), also the data manager of seeds 000 and 001.

It owns the ``contents`` collection (every stored item: seed 004 resources and plain data files,
each with a UUID id, an owner and a blob) and the blobs those items point to. The gateway streams
uploads into the blob store and sends a command with the blob's reference; this service commits the
metadata, deletes the blobs nothing refers to any more, and periodically removes orphaned uploads.
"""
