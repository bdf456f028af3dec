crate::store::limits::backend_impl!();
