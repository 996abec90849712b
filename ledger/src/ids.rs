//! Identifiers. Every id is a non-nil, non-max UUID chosen by the client (TigerBeetle's rule:
//! zero and the maximum are reserved), so retries can reuse it and replays are recognised.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a string or UUID is not a valid identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must be a UUID such as 0192d1a4-8c3e-7b61-9a0f-2f4b5c6d7e8f")]
    Malformed,
    #[error("must not be the nil UUID (all zeros)")]
    Nil,
    #[error("must not be the max UUID (all ones)")]
    Max,
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "Uuid", into = "Uuid")]
        pub struct $name(Uuid);

        impl $name {
            /// Accepts any UUID but the nil and the max one.
            pub fn new(uuid: Uuid) -> Result<Self, IdError> {
                if uuid.is_nil() {
                    Err(IdError::Nil)
                } else if uuid.is_max() {
                    Err(IdError::Max)
                } else {
                    Ok(Self(uuid))
                }
            }

            /// Parses the hyphenated or simple textual form of a UUID.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                Self::new(Uuid::parse_str(text).map_err(|_| IdError::Malformed)?)
            }

            /// A fresh time-ordered id (UUIDv7), the recommended kind: it keeps indexes compact.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(self) -> Uuid {
                self.0
            }
        }

        impl TryFrom<Uuid> for $name {
            type Error = IdError;
            fn try_from(uuid: Uuid) -> Result<Self, IdError> {
                Self::new(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// Identifies a transfer; chosen by the client so that a retry is recognised as a replay.
    TransferId
);
id_type!(
    /// Identifies an account.
    AccountId
);
id_type!(
    /// Identifies a customer organization (tenant) that owns accounts.
    OrgId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ids_are_refused() {
        assert_eq!(TransferId::new(Uuid::nil()), Err(IdError::Nil));
        assert_eq!(TransferId::new(Uuid::max()), Err(IdError::Max));
        assert_eq!(AccountId::parse("not-a-uuid"), Err(IdError::Malformed));
        let id = OrgId::parse("0192d1a4-8c3e-7b61-9a0f-2f4b5c6d7e8f").unwrap();
        assert_eq!(id.to_string(), "0192d1a4-8c3e-7b61-9a0f-2f4b5c6d7e8f");
    }
}
