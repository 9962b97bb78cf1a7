// One extension module, trim_fast._C; each op registers its own functions.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_attention_saliency(py::module_& m);
void register_token_match(py::module_& m);

PYBIND11_MODULE(_C, m) {
    m.doc() = "trim_fast native CPU kernels";
#ifdef _OPENMP
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
    register_attention_saliency(m);
    register_token_match(m);
}
