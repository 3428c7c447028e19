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

# NFKIT_SANITIZE=address,undefined instruments every nfkit target (libraries, the command, the
# tests); NFKIT_FUZZ adds libFuzzer's coverage instrumentation (clang only) and, unless
# NFKIT_SANITIZE says otherwise, address and undefined. UBSan findings abort (no recovery), so
# a test that meets one fails. LibTorch, OpenMM and the other system libraries are not
# instrumented; docs/reliability.md says how their reports are kept out.
macro(nfkit_sanitizer_flags)
  set(_nfkit_san "${NFKIT_SANITIZE}")
  if(NFKIT_FUZZ)
    if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
      message(FATAL_ERROR "NFKIT_FUZZ needs clang: configure with -DCMAKE_CXX_COMPILER=clang++ "
                          "-DCMAKE_C_COMPILER=clang (scripts/fuzz does)")
    endif()
    if(NOT _nfkit_san)
      set(_nfkit_san "address,undefined")
    endif()
    add_compile_options(-fsanitize=fuzzer-no-link)
  endif()
  if(_nfkit_san)
    add_compile_options(-fsanitize=${_nfkit_san} -fno-sanitize-recover=all
                        -fno-omit-frame-pointer -g1)
    add_link_options(-fsanitize=${_nfkit_san})
  endif()
endmacro()
