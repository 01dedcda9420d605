//! Who may do what: keys and JWTs ([`auth`]), policies of private channels
//! ([`authz`]), and the caps and rates that keep one client from crowding
//! out the others ([`admission`]).

pub mod admission;
pub mod auth;
pub mod authz;
