//! hubmesh content-addressed store (work in progress).
