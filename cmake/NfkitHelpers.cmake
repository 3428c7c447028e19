# Common settings for every nfkit target.

# Torch's exported compile options (e.g. -D_GLIBCXX_USE_CXX11_ABI) travel through
# TORCH_CXX_FLAGS; turn them into a list once.
separate_arguments(NFKIT_TORCH_CXX_FLAGS UNIX_COMMAND "${TORCH_CXX_FLAGS}")

function(nfkit_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra ${NFKIT_TORCH_CXX_FLAGS})
  if(NFKIT_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# Precompiled header for torch. Each target builds its own: reusing one PCH across
# libraries and executables breaks on their different -fPIC/-fPIE flags.
function(nfkit_use_torch_pch target)
  target_precompile_headers(${target} PRIVATE <torch/torch.h> <string> <vector> <memory>)
endfunction()
