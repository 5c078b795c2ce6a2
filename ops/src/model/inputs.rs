//! Token rows into model inputs: packed rows of `seq + 1` ids become the input ids and the
//! explicitly shifted labels (the label of position i is the token at i + 1).

use burn::tensor::{Device, Int, Tensor, TensorData};

/// Inputs and shifted labels of packed rows, each `[rows, seq]`.
pub fn to_tensors(rows: &[Vec<i64>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let b = rows.len();
    let s = rows[0].len() - 1;
    let x: Vec<i64> = rows.iter().flat_map(|r| r[..s].iter().copied()).collect();
    let y: Vec<i64> = rows.iter().flat_map(|r| r[1..].iter().copied()).collect();
    (
        Tensor::from_data(TensorData::new(x, [b, s]), device),
        Tensor::from_data(TensorData::new(y, [b, s]), device),
    )
}

/// Rows of ids (all of one length) as a `[rows, len]` tensor.
pub fn ids_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let (b, s) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, s]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_inputs_shifted_by_one() {
        let dev = crate::device::test_device();
        let (x, y) = to_tensors(&[vec![1, 2, 3, 4], vec![5, 6, 7, 8]], &dev);
        assert_eq!(
            x.to_data().convert::<i64>().try_to_vec::<i64>().unwrap(),
            vec![1, 2, 3, 5, 6, 7]
        );
        assert_eq!(
            y.to_data().convert::<i64>().try_to_vec::<i64>().unwrap(),
            vec![2, 3, 4, 6, 7, 8]
        );
    }
}
