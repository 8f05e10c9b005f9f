//! openraft's storage conformance suite against the log store and the
//! state machine: the contract openraft relies on, checked case by case.

use openraft::testing::{StoreBuilder, Suite};
use raft_node::log_store::LogStore;
use raft_node::state_machine::StateMachine;
use raft_node::types::{NodeId, StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("log")).expect("open log store");
        let options = storage::Options {
            memtable_bytes_max: 64 * 1024,
            ..storage::Options::default()
        };
        let state_machine = StateMachine::open(&dir.path().join("sm"), options).expect("open state machine");
        Ok((dir, log, state_machine))
    }
}

#[test]
fn log_store_and_state_machine_pass_openraft_conformance_suite() {
    // Every storage behaviour openraft depends on, from its own test suite.
    let _: NodeId = 0;
    if let Err(error) = Suite::test_all(Builder) {
        panic!("conformance suite failed: {error}");
    }
}
