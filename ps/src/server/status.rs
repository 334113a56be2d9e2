//! The one conversion of PS errors to gRPC statuses, so handlers use `?`.

use crate::error::PsError;

impl From<PsError> for tonic::Status {
    fn from(e: PsError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            PsError::Invalid(_) => tonic::Status::invalid_argument(msg),
            PsError::Unavailable(_) => tonic::Status::unavailable(msg),
            PsError::Checkpoint { .. } | PsError::Io { .. } | PsError::Internal(_) => {
                tonic::Status::internal(msg)
            }
        }
    }
}
