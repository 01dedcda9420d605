//! Where presence lives beyond one node: [`redis`], several nodes sharing
//! each channel's presence and broadcasts through Redis.

pub mod redis;
