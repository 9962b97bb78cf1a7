#include <pybind11/pybind11.h>
namespace py = pybind11;
// Placeholder until the op lands; registers nothing.
void register_attention_saliency(py::module_& m) { (void)m; }
