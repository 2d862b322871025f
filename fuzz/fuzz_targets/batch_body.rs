//! `list-by-condition` bodies from clients: parsing must never panic, and accepted ids are valid,
//! unique and within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mjgate::fetch::batch::BatchQuery;
use mjgate::task::TaskId;

fuzz_target!(|data: &[u8]| {
    if let Ok(BatchQuery::Ids(ids)) = BatchQuery::parse(data, 500, &["action".to_owned()]) {
        assert!(ids.len() <= 500);
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            assert!(TaskId::parse(id).is_ok());
            assert!(seen.insert(id.clone()));
        }
    }
});
