"""The store's tables and the schema version (migrations live beside them)."""

from __future__ import annotations

#: Version 2 added the recorded grids (``haqa grid record``).
SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS haqa_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    model VARCHAR NOT NULL,
    hardware_fingerprint VARCHAR,
    hardware VARCHAR,
    goal VARCHAR,
    brain VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    config VARCHAR,
    result VARCHAR
);
CREATE TABLE IF NOT EXISTS trials (
    run_id VARCHAR NOT NULL,
    trial_id INTEGER NOT NULL,
    stage VARCHAR NOT NULL,
    tool VARCHAR NOT NULL,
    config VARCHAR NOT NULL,
    metrics VARCHAR NOT NULL,
    accuracy DOUBLE,
    prefill_tps DOUBLE,
    decode_tps DOUBLE,
    peak_mem_bytes BIGINT,
    artifact_bytes BIGINT,
    status VARCHAR NOT NULL,
    error VARCHAR,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP NOT NULL,
    duration_s DOUBLE NOT NULL,
    PRIMARY KEY (run_id, trial_id)
);
CREATE TABLE IF NOT EXISTS messages (
    run_id VARCHAR NOT NULL,
    seq INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    agent VARCHAR NOT NULL,
    role VARCHAR NOT NULL,
    content VARCHAR NOT NULL,
    tool_name VARCHAR,
    tool_args VARCHAR,
    tool_result VARCHAR,
    PRIMARY KEY (run_id, seq)
);
"""

_GRID_TABLES = """
CREATE TABLE IF NOT EXISTS grids (
    grid_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    model VARCHAR NOT NULL,
    speed_model VARCHAR,
    hardware_fingerprint VARCHAR NOT NULL,
    hardware VARCHAR,
    space VARCHAR NOT NULL,
    settings VARCHAR NOT NULL,
    status VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS grid_points (
    grid_id VARCHAR NOT NULL,
    config_key VARCHAR NOT NULL,
    repeat INTEGER NOT NULL,
    config VARCHAR NOT NULL,
    metrics VARCHAR NOT NULL,
    duration_s DOUBLE NOT NULL,
    PRIMARY KEY (grid_id, config_key, repeat)
);
"""

#: The whole schema of a new file.
SCHEMA = _SCHEMA_V1 + _GRID_TABLES

#: DDL that takes a file from version k to k + 1.
MIGRATIONS: dict[int, str] = {1: _GRID_TABLES}
