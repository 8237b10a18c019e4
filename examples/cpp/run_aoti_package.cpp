// Runs an AOTInductor package of a fused RegNet, written by regnet_ext.deploy.aoti_package or
// `regnet-ext export`, from C++ without Python: the package calls the regnet_ext operators,
// which linking libregnet_ext_ops registers.
//
//   run_aoti_package MODEL.pt2 INPUT.pt OUTPUT.pt
//
// INPUT.pt: one image batch saved by Python's torch.save, in either memory format: it is handed
// over in the one the package was compiled for (its metadata says). The package checks the
// batch's sizes and strides itself (AOTI_RUNTIME_CHECK_INPUTS, set here unless the environment
// sets it): unchecked, an input it was not compiled for gives wrong output or worse.
// OUTPUT.pt: the model's output, for torch.load.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/serialize.h>

#include <cstdlib>
#include <exception>
#include <filesystem>
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
  setenv("AOTI_RUNTIME_CHECK_INPUTS", "1", /*overwrite=*/0);
  try {
    if (!std::filesystem::is_regular_file(argv[1])) throw std::runtime_error(std::string("no package file at ") + argv[1]);
    torch::inductor::AOTIModelPackageLoader package(argv[1]);
    // The input record aoti_package writes is JSON from Python's json.dumps.
    const std::string record = package.get_metadata()["regnet_ext.input"];
    const bool channels_last = record.find("\"channels_last\": true") != std::string::npos;
    const at::Tensor x = torch::pickle_load(read_bytes(argv[2])).toTensor().contiguous(
        channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    std::vector<at::Tensor> outputs;
    {
      c10::InferenceMode inference;
      outputs = package.run({x});
    }
    write_bytes(argv[3], torch::pickle_save(outputs.at(0)));
  } catch (const c10::Error& e) {
    std::cerr << "run_aoti_package: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "run_aoti_package: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
