//! Dense tensors (MLP weights, gates, towers) with their optimizer state. All of a
//! store's tensors sit behind one lock: a push updates a batch's tensors together and a
//! snapshot for publishing is consistent across tensors.

use crate::error::{PsError, Result};
use crate::optimizer;
use odl_proto::params::DenseSpec;
use std::collections::BTreeMap;

pub struct DenseTensor {
    pub spec: DenseSpec,
    /// Weights and optimizer state, laid out as [`optimizer`] describes.
    pub record: Vec<f32>,
}

impl DenseTensor {
    pub fn len(&self) -> usize {
        self.spec.init.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spec.init.is_empty()
    }

    pub fn weights(&self) -> Vec<f32> {
        let mut w = vec![0.0; self.len()];
        optimizer::read_weights(&self.spec.optimizer, &self.record, &mut w);
        w
    }
}

/// Checks a dense spec on its own: shape, init length and values, optimizer.
pub fn validate_spec(spec: &DenseSpec) -> Result<()> {
    let n: usize = spec.shape.iter().product();
    if spec.name.is_empty() || spec.shape.is_empty() || n == 0 {
        return Err(PsError::invalid(format!(
            "dense {:?}: needs a name and a non-empty shape, got {:?}",
            spec.name, spec.shape
        )));
    }
    if spec.init.len() != n {
        return Err(PsError::invalid(format!(
            "dense {:?}: init has {} values, shape {:?} needs {n}",
            spec.name,
            spec.init.len(),
            spec.shape
        )));
    }
    if spec.init.iter().any(|x| !x.is_finite()) {
        return Err(PsError::invalid(format!(
            "dense {:?}: init is not finite",
            spec.name
        )));
    }
    optimizer::validate(&spec.optimizer)
}

#[derive(Default)]
pub struct DenseSet {
    pub tensors: BTreeMap<String, DenseTensor>,
}

impl DenseSet {
    /// Creates the tensor from its init, or checks the held one matches (and takes the
    /// new hyperparameters).
    pub fn declare(&mut self, spec: &DenseSpec) -> Result<()> {
        match self.tensors.get_mut(&spec.name) {
            Some(t) => {
                if t.spec.shape.iter().product::<usize>() != spec.init.len()
                    || !optimizer::same_layout(&t.spec.optimizer, &spec.optimizer)
                {
                    return Err(PsError::invalid(format!(
                        "dense {:?} exists with shape {:?} and {:?}; declared {:?} and {:?}",
                        spec.name, t.spec.shape, t.spec.optimizer, spec.shape, spec.optimizer
                    )));
                }
                t.spec.shape = spec.shape.clone();
                t.spec.optimizer = spec.optimizer.clone();
            }
            None => {
                let mut record = vec![0.0; optimizer::record_len(&spec.optimizer, spec.init.len())];
                optimizer::init_record(&spec.optimizer, &spec.init, &mut record);
                self.tensors.insert(
                    spec.name.clone(),
                    DenseTensor {
                        spec: spec.clone(),
                        record,
                    },
                );
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&DenseTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| PsError::invalid(format!("unknown dense tensor {name:?}")))
    }

    /// Validates every gradient first, then applies them all: a bad entry rejects the
    /// whole push and changes nothing.
    pub fn push(&mut self, grads: &[(String, Vec<f32>)]) -> Result<()> {
        for (name, g) in grads {
            let t = self.get(name)?;
            if g.len() != t.len() {
                return Err(PsError::invalid(format!(
                    "dense {name:?}: gradient has {} values, tensor has {}",
                    g.len(),
                    t.len()
                )));
            }
            if g.iter().any(|x| !x.is_finite()) {
                return Err(PsError::invalid(format!(
                    "dense {name:?}: gradient is not finite"
                )));
            }
        }
        let mut scratch = Vec::new();
        let mut refused = Vec::new();
        for (name, g) in grads {
            if let Some(t) = self.tensors.get_mut(name) {
                if !optimizer::apply(&t.spec.optimizer, &mut t.record, g, &mut scratch) {
                    refused.push(name.as_str());
                }
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(PsError::invalid(format!(
                "dense update would overflow, tensors left unchanged: {refused:?}"
            )))
        }
    }
}
