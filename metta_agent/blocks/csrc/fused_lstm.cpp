// A multi-layer LSTM over batch-major segments whose rows may restart at any step, in one call.
//
// keep[b, t] multiplies the state entering step t of row b (0 where that row starts a new episode), so a
// segment with restarts costs the same as one without. Gate order and weights are nn.LSTM's
// (i, f, g, o; w_ih, w_hh, b_ih, b_hh per layer). The input projections and the weight gradients are one
// matrix product per layer; each step runs one small product for the recurrence and one fused, vectorised
// loop for the gates. Python side: metta_agent/blocks/fused_lstm.py.
#include <torch/extension.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

using at::Tensor;
using at::vec::Vectorized;

namespace {

template <typename T>
inline Vectorized<T> sigmoid(const Vectorized<T>& x) {
  return (Vectorized<T>(T(1)) + x.neg().exp()).reciprocal();
}

// Strides shared by the [B, T, H] buffers (row = T * H) and the [B, T, 4H] gate buffers (row = T * 4H).
struct Layout {
  int64_t B, T, H;
  int64_t row() const { return T * H; }
  int64_t gate_row() const { return T * 4 * H; }
};

// Step t for every row: gates = input projection (in place in `gates`) + recurrent product `rec`;
// writes the activations over `gates`, then c, tanh(c) and h. When a next step exists, also writes the
// state it starts from (h and c times keep_next) into hp_next / cp_next.
template <typename T>
void forward_step(const Layout& s, T* gates, const T* rec, const T* c_prev, T* c_out, T* tanh_c_out, T* h_out,
                  T* hp_next, T* cp_next, const T* keep_next) {
  using V = Vectorized<T>;
  const int64_t H = s.H, width = V::size();
  for (int64_t b = 0; b < s.B; ++b) {
    T* g = gates + b * s.gate_row();
    const T* r = rec + b * 4 * H;
    const int64_t o = b * s.row();
    const V keep(keep_next ? keep_next[b] : T(1));
    for (int64_t j = 0; j < H; j += width) {
      const int64_t m = std::min(width, H - j);
      const V i = sigmoid(V::loadu(g + j, m) + V::loadu(r + j, m));
      const V f = sigmoid(V::loadu(g + H + j, m) + V::loadu(r + H + j, m));
      const V cell = (V::loadu(g + 2 * H + j, m) + V::loadu(r + 2 * H + j, m)).tanh();
      const V out = sigmoid(V::loadu(g + 3 * H + j, m) + V::loadu(r + 3 * H + j, m));
      const V c = f * V::loadu(c_prev + o + j, m) + i * cell;
      const V tanh_c = c.tanh();
      const V h = out * tanh_c;
      i.store(g + j, m);
      f.store(g + H + j, m);
      cell.store(g + 2 * H + j, m);
      out.store(g + 3 * H + j, m);
      c.store(c_out + o + j, m);
      tanh_c.store(tanh_c_out + o + j, m);
      h.store(h_out + o + j, m);
      if (hp_next) {
        (h * keep).store(hp_next + o + j, m);
        (c * keep).store(cp_next + o + j, m);
      }
    }
  }
}

// Step t backwards for every row. dh_carry / dc_carry are the gradients reaching the state that left step t
// (before step t+1's reset, which keep_next applies here). Writes the pre-activation gate gradients and the
// gradient reaching c_{t-1} (after this step's own reset is applied by the caller's next iteration).
template <typename T>
void backward_step(const Layout& s, const T* act, const T* tanh_c, const T* c_prev, const T* dy, const T* dh_carry,
                   const T* dc_carry, const T* keep_next, T* d_gates, T* dc_prev) {
  using V = Vectorized<T>;
  const int64_t H = s.H, width = V::size();
  const V one(T(1));
  for (int64_t b = 0; b < s.B; ++b) {
    const T* a = act + b * s.gate_row();
    T* d = d_gates + b * s.gate_row();
    const int64_t o = b * s.row();
    const V keep(keep_next ? keep_next[b] : T(1));
    for (int64_t j = 0; j < H; j += width) {
      const int64_t m = std::min(width, H - j);
      const V i = V::loadu(a + j, m), f = V::loadu(a + H + j, m);
      const V cell = V::loadu(a + 2 * H + j, m), out = V::loadu(a + 3 * H + j, m);
      const V tc = V::loadu(tanh_c + o + j, m);
      const V dh = V::loadu(dy + o + j, m) + keep * V::loadu(dh_carry + b * H + j, m);
      const V dc = keep * V::loadu(dc_carry + b * H + j, m) + dh * out * (one - tc * tc);
      (dc * cell * i * (one - i)).store(d + j, m);
      (dc * V::loadu(c_prev + o + j, m) * f * (one - f)).store(d + H + j, m);
      (dc * i * (one - cell * cell)).store(d + 2 * H + j, m);
      (dh * tc * out * (one - out)).store(d + 3 * H + j, m);
      (dc * f).store(dc_prev + b * H + j, m);
    }
  }
}

void check_inputs(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& keep,
                  const std::vector<Tensor>& weights) {
  TORCH_CHECK(x.device().is_cpu(), "fused LSTM: CPU tensors only");
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 3 && c0.sizes() == h0.sizes() && keep.dim() == 2,
              "fused LSTM: expects x [B, T, I], h0/c0 [L, B, H], keep [B, T]");
  TORCH_CHECK(h0.size(1) == x.size(0) && keep.size(0) == x.size(0) && keep.size(1) == x.size(1),
              "fused LSTM: batch or time sizes disagree");
  TORCH_CHECK((int64_t)weights.size() == 4 * h0.size(0), "fused LSTM: needs w_ih, w_hh, b_ih, b_hh per layer");
  for (const auto& w : weights) TORCH_CHECK(w.scalar_type() == x.scalar_type(), "fused LSTM: mixed dtypes");
  TORCH_CHECK(weights[0].size(1) == x.size(2), "fused LSTM: input size ", x.size(2), ", the LSTM takes ",
              weights[0].size(1));
  TORCH_CHECK(weights[1].size(1) == h0.size(2), "fused LSTM: hidden size ", h0.size(2), ", the LSTM has ",
              weights[1].size(1));
}

}  // namespace

// Returns y [B, T, H], h_n, c_n, then per layer (only when save): the layer input [B*T, I], the gate
// activations [B, T, 4H], tanh(c) [B, T, H], and the state each step started from, hp and cp [B, T, H].
std::vector<Tensor> forward(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& keep,
                            const std::vector<Tensor>& weights, bool save) {
  check_inputs(x, h0, c0, keep, weights);
  const Layout s{x.size(0), x.size(1), h0.size(2)};
  const int64_t B = s.B, T = s.T, H = s.H, layers = h0.size(0);
  const auto opts = x.options();
  const Tensor keep_tb = keep.to(x.scalar_type()).t().contiguous();  // [T, B]: one step's rows side by side
  Tensor h_n = at::empty_like(h0), c_n = at::empty_like(c0);
  std::vector<Tensor> saved;
  Tensor layer_in = x.contiguous();
  for (int64_t l = 0; l < layers; ++l) {
    const Tensor& w_ih = weights[4 * l];
    const Tensor w_hh_t = weights[4 * l + 1].t();
    const Tensor inputs = layer_in.view({B * T, layer_in.size(2)});
    Tensor act = at::addmm(weights[4 * l + 2] + weights[4 * l + 3], inputs, w_ih.t()).view({B, T, 4 * H});
    Tensor y = at::empty({B, T, H}, opts), c = at::empty({B, T, H}, opts), tanh_c = at::empty({B, T, H}, opts);
    Tensor hp = at::empty({B, T, H}, opts), cp = at::empty({B, T, H}, opts);
    const Tensor keep0 = keep_tb[0].unsqueeze(1);
    hp.select(1, 0).copy_(h0[l] * keep0);
    cp.select(1, 0).copy_(c0[l] * keep0);
    Tensor rec = at::empty({B, 4 * H}, opts);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_lstm_forward", [&] {
      const scalar_t* keep_ptr = keep_tb.data_ptr<scalar_t>();
      scalar_t *act_ptr = act.data_ptr<scalar_t>(), *hp_ptr = hp.data_ptr<scalar_t>(), *cp_ptr = cp.data_ptr<scalar_t>();
      for (int64_t t = 0; t < T; ++t) {
        at::mm_out(rec, hp.select(1, t), w_hh_t);
        const bool next = t + 1 < T;
        forward_step<scalar_t>(s, act_ptr + t * 4 * H, rec.data_ptr<scalar_t>(), cp_ptr + t * H,
                               c.data_ptr<scalar_t>() + t * H, tanh_c.data_ptr<scalar_t>() + t * H,
                               y.data_ptr<scalar_t>() + t * H, next ? hp_ptr + (t + 1) * H : nullptr,
                               next ? cp_ptr + (t + 1) * H : nullptr, next ? keep_ptr + (t + 1) * B : nullptr);
      }
    });
    h_n[l].copy_(y.select(1, T - 1));
    c_n[l].copy_(c.select(1, T - 1));
    if (save) saved.insert(saved.end(), {inputs, act, tanh_c, hp, cp});
    layer_in = y;
  }
  std::vector<Tensor> out{layer_in, h_n, c_n};
  out.insert(out.end(), saved.begin(), saved.end());
  return out;
}

// Returns dx, dh0, dc0, then per layer dw_ih, dw_hh, db_ih, db_hh.
std::vector<Tensor> backward(const Tensor& dy_top, const Tensor& dh_n, const Tensor& dc_n, const Tensor& keep,
                             const std::vector<Tensor>& weights, const std::vector<Tensor>& saved) {
  const int64_t layers = (int64_t)weights.size() / 4;
  const Layout s{saved[1].size(0), saved[1].size(1), saved[1].size(2) / 4};
  const int64_t B = s.B, T = s.T, H = s.H;
  const auto opts = dy_top.options();
  const Tensor keep_tb = keep.to(dy_top.scalar_type()).t().contiguous();
  Tensor dh0 = at::empty({layers, B, H}, opts), dc0 = at::empty({layers, B, H}, opts);
  std::vector<Tensor> dw(4 * layers);
  Tensor dy = dy_top.contiguous();
  for (int64_t l = layers - 1; l >= 0; --l) {
    const Tensor &inputs = saved[5 * l], &act = saved[5 * l + 1], &tanh_c = saved[5 * l + 2];
    const Tensor &hp = saved[5 * l + 3], &cp = saved[5 * l + 4];
    const Tensor& w_ih = weights[4 * l];
    const Tensor& w_hh = weights[4 * l + 1];
    Tensor d_gates = at::empty({B, T, 4 * H}, opts);
    Tensor dh_carry = dh_n[l].contiguous().clone(), dc_carry = dc_n[l].contiguous().clone();
    Tensor dc_prev = at::empty({B, H}, opts);
    AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fused_lstm_backward", [&] {
      const scalar_t* keep_ptr = keep_tb.data_ptr<scalar_t>();
      for (int64_t t = T - 1; t >= 0; --t) {
        const bool next = t + 1 < T;
        backward_step<scalar_t>(s, act.data_ptr<scalar_t>() + t * 4 * H, tanh_c.data_ptr<scalar_t>() + t * H,
                                cp.data_ptr<scalar_t>() + t * H, dy.data_ptr<scalar_t>() + t * H,
                                dh_carry.data_ptr<scalar_t>(), dc_carry.data_ptr<scalar_t>(),
                                next ? keep_ptr + (t + 1) * B : nullptr, d_gates.data_ptr<scalar_t>() + t * 4 * H,
                                dc_prev.data_ptr<scalar_t>());
        std::swap(dc_carry, dc_prev);
        at::mm_out(dh_carry, d_gates.select(1, t), w_hh);
      }
    });
    const Tensor keep0 = keep_tb[0].unsqueeze(1);
    dh0[l].copy_(dh_carry * keep0);
    dc0[l].copy_(dc_carry * keep0);
    const Tensor d_flat = d_gates.view({B * T, 4 * H});
    dw[4 * l] = at::mm(d_flat.t(), inputs);
    dw[4 * l + 1] = at::mm(d_flat.t(), hp.view({B * T, H}));
    dw[4 * l + 2] = d_flat.sum(0);
    dw[4 * l + 3] = dw[4 * l + 2].clone();
    dy = at::mm(d_flat, w_ih).view({B, T, w_ih.size(1)});
  }
  std::vector<Tensor> out{dy, dh0, dc0};
  out.insert(out.end(), dw.begin(), dw.end());
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused LSTM forward over segments with per-row resets");
  m.def("backward", &backward, "its backward");
}
