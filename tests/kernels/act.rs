use dst::kernels::run_once;
use dst::reference::act as reference;
use dst::rng::Rng;

use crate::common::*;

#[test]
fn relu_forward_backward_match_reference() {
    let c = ctx();
    let mut rng = Rng::new(31);
    for n in [1usize, 7, 65, 300, 19_200, 70_001] {
        let mut x = rand_vec(&mut rng, n, -1.0, 1.0);
        x[0] = 0.0; // relu'(0) = 0, as torch's threshold_backward
        let dy = rand_vec(&mut rng, n, -1.0, 1.0);
        let (xt, dyt) = (c.tensor("x", &[n], &x), c.tensor("dy", &[n], &dy));
        let (y, dx) = (c.poisoned("y", &[n]), c.poisoned("dx", &[n]));
        let a = &c.k.act;
        let ds = [
            a.relu_forward(&c.gpu, &xt, &y).unwrap(),
            a.relu_backward(&c.gpu, &dyt, &y, &dx).unwrap(),
        ];
        run_once(&c.gpu, &ds, 0).unwrap();
        let y_ref = reference::relu_forward(&to_f64(&x));
        assert_close(&format!("relu_forward n{n}"), &c.read(&y), &y_ref, 0.0, 0.0);
        assert_close(
            &format!("relu_backward n{n}"),
            &c.read(&dx),
            &reference::relu_backward(&to_f64(&dy), &y_ref),
            0.0,
            0.0,
        );
    }
}
