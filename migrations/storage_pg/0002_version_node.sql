-- Which node wrote a version (issue 14): on PostgreSQL, several storage nodes share the
-- database, and a node's start-up sweep aborts only the `writing` versions of nodes that are
-- no longer alive (each live node holds an advisory lock named by this number). NULL on
-- SQLite (one node per database) and for rows written before this migration. (PostgreSQL: migrations/storage/0007 of the SQLite schema.)
ALTER TABLE versions ADD COLUMN node BIGINT;
