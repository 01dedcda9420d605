//! Several nodes sharing presence through a real Redis (each test starts
//! its own redis-server and nodes): convergence and order, node and Redis
//! failures, audits, leave grace, last seen, quiet updates and webhooks;
//! `redis_cluster` runs nodes on a Redis Cluster (`--redis-cluster`).

#[path = "../cluster_support/mod.rs"]
mod cluster_support;
#[path = "../common/mod.rs"]
mod common;
#[path = "../webhook_receiver/mod.rs"]
mod webhook_receiver;

mod audit;
mod convergence;
mod grace;
mod island;
mod last_seen;
mod quiet;
mod redis_cluster;
mod webhooks;
