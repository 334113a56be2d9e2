//! The serving node (`odl serve`): subscribes to published versions, applies each atomically, confirms it, and answers predictions in the TensorFlow Serving REST shape.
