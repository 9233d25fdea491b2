//! hub-netsim's tests: the simulation at a small scale (in-process), and a small version of
//! every lab scenario (the binary, real `hubmesh` processes in namespaces).

mod lab;
mod sim;
