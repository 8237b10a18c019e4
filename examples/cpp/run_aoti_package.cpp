// Runs an AOTInductor package (torch._inductor.aoti_compile_and_package) of a fused RegNet from
// C++, without Python: the package calls the regnet_ext operators, which linking
// libregnet_ext_ops registers.
//
//   run_aoti_package MODEL.pt2 INPUT.pt OUTPUT.pt
//
// INPUT.pt: one image batch saved by Python's torch.save (NCHW, any memory format; it is made
// channels_last, the layout fused models run in). OUTPUT.pt: the model's output, for torch.load.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/serialize.h>

#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 INPUT.pt OUTPUT.pt\n";
    return 2;
  }
  try {
    torch::inductor::AOTIModelPackageLoader package(argv[1]);
    const at::Tensor x = torch::pickle_load(read_bytes(argv[2])).toTensor().contiguous(at::MemoryFormat::ChannelsLast);
    std::vector<at::Tensor> outputs;
    {
      c10::InferenceMode inference;
      outputs = package.run({x});
    }
    write_bytes(argv[3], torch::pickle_save(outputs.at(0)));
  } catch (const std::exception& e) {
    std::cerr << "run_aoti_package: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
