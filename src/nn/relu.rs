//! ReLU (shaders/act.wgsl).

use super::{Layer, PlanCx};
use crate::gpu::{Result, Tensor};

pub struct Relu {
    name: String,
}

impl Relu {
    pub fn new(name: &str) -> Relu {
        Relu {
            name: name.to_string(),
        }
    }
}

impl Layer for Relu {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }

    fn forward(&self, cx: &mut PlanCx<'_>, x: &Tensor) -> Result<Tensor> {
        let y = cx.activation(&format!("{}.y", self.name), &x.shape)?;
        let d = cx.kernels.act.relu_forward(cx.gpu, x, &y)?;
        cx.push(d);
        Ok(y)
    }

    fn backward(
        &self,
        cx: &mut PlanCx<'_>,
        _x: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        if !need_dx {
            return Ok(None);
        }
        let dx = cx.activation(&format!("{}.d_input", self.name), &y.shape)?;
        let d = cx.kernels.act.relu_backward(cx.gpu, dy, y, &dx)?;
        cx.push(d);
        Ok(Some(dx))
    }
}
