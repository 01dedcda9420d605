//! Roster client (work in progress).
