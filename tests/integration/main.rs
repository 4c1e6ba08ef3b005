//! Integration tests against the real test bed (slapd and Samba AD).
//! One binary with modules, so it compiles once.

mod audit;
mod cli;
mod collide;
mod common;
mod compliance;
mod conflicts;
mod crash;
mod delta;
mod dnform;
mod escape;
mod evidence;
mod failover;
mod faults;
mod flat;
mod hostile;
mod identity;
mod interfaces;
mod maildomains;
mod ops;
mod orgstatus;
mod preflight;
mod report;
mod retention;
mod robust;
mod safety;
mod security;
mod service;
mod signing;
mod smoke;
mod state;
mod sync;
mod terms;
mod truth;
mod twins;
