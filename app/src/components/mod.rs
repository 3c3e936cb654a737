pub mod chart;
pub mod filters;
pub mod form;
pub mod guard;
pub mod layout;
pub mod pager;
pub mod quota;
pub mod timestamp;
