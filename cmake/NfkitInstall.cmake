# Installation and the package config that lets outside projects write
#   find_package(nfkit REQUIRED)
#   target_link_libraries(app PRIVATE nfkit::nfkit)
include(CMakePackageConfigHelpers)

install(TARGETS nfkit_core nfkit_flows nfkit_physics nfkit_boltzmann nfkit_inference nfkit_opf nfkit_viz nfkit_all
        EXPORT nfkitTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(NFKIT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/nfkit)
install(EXPORT nfkitTargets NAMESPACE nfkit:: DESTINATION ${NFKIT_CMAKE_DIR})

configure_package_config_file(cmake/nfkitConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/nfkitConfig.cmake
  INSTALL_DESTINATION ${NFKIT_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/nfkitConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/nfkitConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/nfkitConfigVersion.cmake
        DESTINATION ${NFKIT_CMAKE_DIR})
