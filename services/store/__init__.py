"""Document and blob stores: the ports, the SQLite/disk adapters (embedded) and MongoDB/GridFS."""
