//! The registration of source, writer and notifier kinds.
//!
//! Each kind lives in its own file with a settings struct that implements its role's
//! settings trait (`SourceSettings`, `WriterSettings`, `NotifierSettings`). The `kinds!`
//! macro turns a list of `"type" => Variant(Settings)` lines into the enum the job file is
//! read into, tagged by its `type` key, and the dispatch to the trait. Each line also
//! declares the kind's module and re-exports its public items, so adding a kind is its file
//! and one line in that list:
//!
//! ```text
//! mod webdav: "webdav" => Webdav(Box<WebdavConfig>),
//! ```

/// Declares a job-file enum of kinds, tagged by `type`, dispatching to `$settings`.
macro_rules! kinds {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $settings:path {
            $( $(#[$vmeta:meta])* mod $module:ident: $tag:literal => $variant:ident($ty:ty), )+
        }
    ) => {
        $(
            mod $module;
            pub use $module::*;
        )+

        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(tag = "type")]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $tag)] $variant($ty), )+
        }

        impl $name {
            /// The kind's name, as written in `type`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( $name::$variant(_) => $tag, )+
                }
            }

            /// The kind's settings, behind the role's settings trait.
            pub fn settings(&self) -> &dyn $settings {
                match self {
                    $( $name::$variant(inner) => inner, )+
                }
            }
        }
    };
}

pub(crate) use kinds;
