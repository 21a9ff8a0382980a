# Finds LibTorch in the documented order and explains every miss:
#   1. $LIBTORCH (an unpacked LibTorch zip), 2. $Torch_DIR,
#   3. the torch of $TORCHLITE_PYTHON, else python3, else /usr/bin/python3,
#   4. the system (Debian's libtorch-dev).
# Sets TORCH_LIBRARIES, Torch_VERSION, TORCHLITE_TORCH_LIBDIR, TORCHLITE_TORCH_SOURCE, TORCHLITE_CUDA,
# and TORCHLITE_PYTHON_USED when the LibTorch is a Python torch's (its wheels hold nccl.h).
function(_torchlite_try dir source)
  if(NOT TORCHLITE_TORCH_SOURCE AND EXISTS "${dir}/TorchConfig.cmake")
    set(Torch_DIR "${dir}" CACHE PATH "LibTorch CMake folder" FORCE)
    set(TORCHLITE_TORCH_SOURCE "${source}" PARENT_SCOPE)
  elseif(NOT TORCHLITE_TORCH_SOURCE)
    set(_tried "${_tried}\n  - ${source}: no TorchConfig.cmake in ${dir}" PARENT_SCOPE)
  endif()
endfunction()

macro(torchlite_find_libtorch)
  set(_tried "")
  set(TORCHLITE_TORCH_SOURCE "")
  if(DEFINED ENV{LIBTORCH})
    _torchlite_try("$ENV{LIBTORCH}/share/cmake/Torch" "LIBTORCH=$ENV{LIBTORCH}")
  else()
    set(_tried "${_tried}\n  - LIBTORCH: not set")
  endif()
  if(DEFINED ENV{Torch_DIR})
    _torchlite_try("$ENV{Torch_DIR}" "Torch_DIR=$ENV{Torch_DIR}")
  else()
    set(_tried "${_tried}\n  - Torch_DIR: not set")
  endif()
  if(DEFINED ENV{TORCHLITE_PYTHON})
    set(_pythons "$ENV{TORCHLITE_PYTHON}")
  else()
    set(_pythons python3 /usr/bin/python3)
  endif()
  foreach(_py IN LISTS _pythons)
    if(NOT TORCHLITE_TORCH_SOURCE)
      execute_process(COMMAND ${_py} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                      OUTPUT_VARIABLE _prefix OUTPUT_STRIP_TRAILING_WHITESPACE
                      RESULT_VARIABLE _rc ERROR_QUIET)
      if(_rc EQUAL 0)
        _torchlite_try("${_prefix}/Torch" "torch of ${_py}")
        if(TORCHLITE_TORCH_SOURCE STREQUAL "torch of ${_py}")
          set(TORCHLITE_PYTHON_USED "${_py}")
        endif()
      else()
        set(_tried "${_tried}\n  - ${_py}: no importable torch")
      endif()
    endif()
  endforeach()
  if(TORCHLITE_TORCH_SOURCE)
    # TorchConfig.cmake finds its libraries with find_library(... PATHS <its lib>), which
    # searches the system's paths first: with Debian's libtorch-dev also installed, an
    # unpacked LibTorch's headers would be linked against the system's libraries. Its own
    # prefix goes first.
    get_filename_component(_torch_prefix "${Torch_DIR}/../../.." ABSOLUTE)
    list(PREPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
    find_package(Torch REQUIRED CONFIG)
  else()
    find_package(Torch QUIET CONFIG)
    if(Torch_FOUND)
      set(TORCHLITE_TORCH_SOURCE "system (${Torch_DIR})")
    else()
      message(FATAL_ERROR "torchlite: LibTorch not found. Tried:${_tried}\n  - the system: find_package(Torch) failed\n"
        "Fix one of:\n"
        "  - Debian/Ubuntu: apt-get install libtorch-dev (or run: bash scripts/bootstrap.sh)\n"
        "  - unpack a LibTorch zip and set LIBTORCH=/path/to/libtorch\n"
        "  - pip install torch and set TORCHLITE_PYTHON=/path/to/python")
    endif()
  endif()
  # Torch_VERSION is only set by newer configs; the library file's version is the fallback.
  if(NOT Torch_VERSION)
    set(Torch_VERSION "${TORCH_VERSION}")
  endif()
  get_target_property(_torch_lib torch IMPORTED_LOCATION)
  if(NOT _torch_lib)
    get_target_property(_torch_lib torch IMPORTED_LOCATION_RELEASE)
  endif()
  if(NOT _torch_lib)
    find_library(_torch_lib torch PATHS "${Torch_DIR}/../../../lib" NO_DEFAULT_PATH)
  endif()
  get_filename_component(TORCHLITE_TORCH_LIBDIR "${_torch_lib}" DIRECTORY)
  if(CAFFE2_USE_CUDA OR TORCH_CUDA_LIBRARIES OR TARGET torch_cuda)
    set(TORCHLITE_CUDA ON)
  else()
    set(TORCHLITE_CUDA OFF)
  endif()
endmacro()
